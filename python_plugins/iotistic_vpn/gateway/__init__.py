"""The gateway agent and its parts: config, management protocol, authorize, spool store,
routes, metrics, HTTP. Run as `python3 -m iotistic_vpn.gateway` (see __main__)."""
