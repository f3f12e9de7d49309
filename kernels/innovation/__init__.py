from .naive import (EMPTY, best_in_order, chunk_candidates, eidetic_stores, innovation_scores, merge_sets,
                    rank_topk)

__all__ = ["EMPTY", "best_in_order", "chunk_candidates", "eidetic_stores", "innovation_scores", "merge_sets",
           "rank_topk"]
