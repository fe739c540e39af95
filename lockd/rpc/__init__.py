"""virtlockd wire protocol: XDR codec (xdr), libvirt RPC framing (virnet), lock program (virtlockd), server."""
