"""Scale-out on Ray Serve: the service's own servicers, key store and engine pool as a Serve
deployment behind Ray's gRPC proxy (see ``deploy/ray/README.md``).

:mod:`.ray_serve` is the only module that imports Ray, and only when a function needs it, so this
package imports without Ray installed (``pip install 'faceanonymixer[ray]'`` adds it).
"""
