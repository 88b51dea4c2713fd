"""Capture on a node (eBPF, AF_PACKET) and Kubernetes identity: who held an IP at a given moment."""
