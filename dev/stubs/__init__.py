"""Stand-ins for vendors, speaking their wire formats: the dev stack runs them, the tests import them."""
