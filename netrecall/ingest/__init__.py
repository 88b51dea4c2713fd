"""Reading captures (pcap, pcapng, live batches), decoding L2-L4 vectorised, loading them into the store."""
