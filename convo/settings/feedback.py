"""Feedback, owner corrections, response analytics, voice transcripts and the learning queue
(docs/feedback.md). Each text limit answers a 400 naming the field one character past it."""

from __future__ import annotations

from convo.env import env

# A rating at or below this (1-5) puts the rated response in the learning queue; a thumbs down
# always does. 0 turns ratings off as a source (thumbs down still counts).
FEEDBACK_LOW_RATING_THRESHOLD: int = env.int("FEEDBACK_LOW_RATING_THRESHOLD", default=2)
# Characters in a feedback comment.
FEEDBACK_MAX_COMMENT_CHARS: int = env.int("FEEDBACK_MAX_COMMENT_CHARS", default=4_000)
# Characters in an answer: a correction's original response and corrected text, and the edited
# answer a reviewer approves.
FEEDBACK_MAX_ANSWER_CHARS: int = env.int("FEEDBACK_MAX_ANSWER_CHARS", default=16_000)
# Characters in a correction's reason and in a reviewer's note.
FEEDBACK_MAX_REASON_CHARS: int = env.int("FEEDBACK_MAX_REASON_CHARS", default=2_000)
# Characters in one voice transcript.
FEEDBACK_MAX_TRANSCRIPT_CHARS: int = env.int("FEEDBACK_MAX_TRANSCRIPT_CHARS", default=200_000)

# --- the knowledge base (docs/knowledge.md) ---
# Characters in a knowledge entry's question (its answer is bounded by FEEDBACK_MAX_ANSWER_CHARS).
KNOWLEDGE_MAX_QUESTION_CHARS: int = env.int("KNOWLEDGE_MAX_QUESTION_CHARS", default=4_000)
# Tags per entry, and characters per tag.
KNOWLEDGE_MAX_TAGS: int = env.int("KNOWLEDGE_MAX_TAGS", default=20)
KNOWLEDGE_MAX_TAG_CHARS: int = env.int("KNOWLEDGE_MAX_TAG_CHARS", default=50)
# The answer lookup (seed 003's response cache, by meaning). The nearest entries vote for their
# answers, each with its similarity, counting only neighbours at or above the suggest threshold.
# The winning answer is *answered* when its best similarity reaches ANSWER_MIN_SIMILARITY and its
# share of the votes reaches ANSWER_MIN_AGREEMENT; otherwise *suggested* when its best similarity
# reaches SUGGEST_MIN_SIMILARITY; otherwise there is no match. Chosen on Banking77 with the
# bundled model (docs/knowledge.md): 89% right, 4% wrong, 7% suggested.
KNOWLEDGE_LOOKUP_NEIGHBOURS: int = env.int("KNOWLEDGE_LOOKUP_NEIGHBOURS", default=5)
KNOWLEDGE_ANSWER_MIN_SIMILARITY: float = env.float("KNOWLEDGE_ANSWER_MIN_SIMILARITY", default=0.60)
KNOWLEDGE_ANSWER_MIN_AGREEMENT: float = env.float("KNOWLEDGE_ANSWER_MIN_AGREEMENT", default=0.60)
KNOWLEDGE_SUGGEST_MIN_SIMILARITY: float = env.float("KNOWLEDGE_SUGGEST_MIN_SIMILARITY", default=0.50)
# Rows in one knowledge import (CSV or JSON) and bytes in an uploaded import file.
KNOWLEDGE_IMPORT_MAX_ROWS: int = env.int("KNOWLEDGE_IMPORT_MAX_ROWS", default=20_000)
KNOWLEDGE_IMPORT_MAX_BYTES: int = env.int("KNOWLEDGE_IMPORT_MAX_BYTES", default=10 * 1024 * 1024)
