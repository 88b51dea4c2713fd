"""The demo incident: a real capture of a small shop failing on DNS, with its Kubernetes inventory.

`incident.pcap` and `inventory.json` are recorded by `record.py` (as root) from real traffic between
network namespaces; `netrecall demo` imports them (netrecall/cli/demo.py).
"""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_PCAP = DEMO_DIR / "incident.pcap"
DEMO_INVENTORY = DEMO_DIR / "inventory.json"
DEMO_NODE = "demo-node-1"
