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
