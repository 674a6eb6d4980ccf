"""The cluster: the sans-IO node, the wire codec, membership, and the asyncio runtime and daemon."""
