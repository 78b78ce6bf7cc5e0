"""Just-in-time approvals: a human reviewer decides on risky requests before they leave."""
