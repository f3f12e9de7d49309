from .naive import EMPTY, chunk_candidates, eidetic_stores, innovation_scores, merge_sets, rank_topk

__all__ = ["EMPTY", "chunk_candidates", "eidetic_stores", "innovation_scores", "merge_sets", "rank_topk"]
