"""Drop-in fused modules."""
