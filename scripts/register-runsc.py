"""Register gVisor's runsc with the local Docker engine, keeping every other setting.

Usage: python3 scripts/register-runsc.py [/etc/docker/daemon.json] [/usr/bin/runsc]
Prints "changed" when it wrote the file (dockerd must then reload: SIGHUP), "unchanged" otherwise.
The runtime arguments are the ones rlmesh's sandboxes need: no network of gVisor's own (Docker's
"none" network mode), the ptrace platform (no KVM needed), and host Unix sockets (a sandbox
dials its owner's socket).
"""

import json
import os
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "/etc/docker/daemon.json"
runsc = sys.argv[2] if len(sys.argv) > 2 else "/usr/bin/runsc"
wanted = {"path": runsc, "runtimeArgs": ["--network=none", "--platform=ptrace", "--host-uds=all"]}
config = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    config = json.loads(text) if text else {}
if config.get("runtimes", {}).get("runsc") == wanted:
    print("unchanged")
    sys.exit(0)
config.setdefault("runtimes", {})["runsc"] = wanted
os.makedirs(os.path.dirname(path), exist_ok=True)
tmp = path + ".rlmesh-tmp"
with open(tmp, "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
print("changed")
