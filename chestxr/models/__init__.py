"""Networks and the Lightning module that trains them."""
