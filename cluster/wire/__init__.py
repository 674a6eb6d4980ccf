"""What crosses the network between nodes: addresses, messages, the codec, sealing."""
