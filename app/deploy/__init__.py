"""What deployments run besides the gateway and engines: their one-time set-up steps."""
