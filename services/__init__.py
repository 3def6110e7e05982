"""hvdm: host-side, event-sourced memory accounting for Hyper-V Dynamic Memory guests."""
