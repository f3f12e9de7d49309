from .naive import fill_ring_reference_, gather_positions, ring_positions

__all__ = ["fill_ring_reference_", "gather_positions", "ring_positions"]
