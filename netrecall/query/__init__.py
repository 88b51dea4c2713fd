"""Answering questions: KFL -> SQL, the read-only SQL guard, PCAP slices and snapshots."""
