"""``hacli serve``: the HA virtual slots for any PKCS#11 application.

hacli speaks the server side of p11-kit's RPC protocol (the one ``p11-kit
server`` speaks), so an application loads the stock ``p11-kit-client.so``
with ``P11_KIT_SERVER_ADDRESS`` pointing at hacli.  One module per job:

- :mod:`hacli.serve.wire`: framing, the handshake byte, version negotiation;
- :mod:`hacli.serve.codec`: the message codec (signatures, argument types);
- :mod:`hacli.serve.calls`: the call dispatch table over the engine;
- :mod:`hacli.serve.server`: the unix socket server, one thread per connection.

No click or rich here: ``hacli/cli/serve.py`` is the command.
"""
