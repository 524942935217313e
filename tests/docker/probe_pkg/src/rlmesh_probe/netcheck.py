"""Imported by an image build's import check: says which network interfaces the build has."""

import socket

print("RLMESH-BUILD-INTERFACES", ",".join(sorted(name for _, name in socket.if_nameindex())), flush=True)
