"""Generated wire types of the ``faceanonymixer.v1`` gRPC API (do not edit).

Produced from ``proto/faceanonymixer/v1/*.proto`` by ``scripts/generate_stubs.py``; light enough
for the client SDK (protobuf and grpcio only, never torch).
"""
