"""Online serving: model packages, behavior stores, the lifelong scorer and the HTTP API (DESIGN §7)."""
