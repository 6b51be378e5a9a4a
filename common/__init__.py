"""Plain types shared by the coordinator, the agent and the SDK (no torch, no gRPC state)."""
