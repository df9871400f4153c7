"""Generated gRPC stubs of FaceAnonyMixer's wire contract, for client and server alike."""
