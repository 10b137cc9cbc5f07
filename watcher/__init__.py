"""The top of the stack: the CLI, the VM backends, the file watcher and the agent."""
