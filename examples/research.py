"""The research agent: search, take notes with an LLM, then answer with an LLM.

``llm`` is a :class:`~aetheris.llm.ScriptedProvider`, so the example is deterministic and needs no
API key; run the worker with ``--llm-provider examples.research:llm``. Point
``AETHERIS_LLM_BASE_URL`` at a real OpenAI-compatible endpoint (and drop ``--llm-provider``) to use
a real model: the agent code stays the same.
"""

from __future__ import annotations

from typing import Any

from aetheris import Context, agent, tool
from aetheris.llm import ScriptedProvider

MODEL = "scripted-1"

DOCUMENTS: tuple[dict[str, str], ...] = (
    {"id": "doc-ledger", "title": "Write-ahead step ledger",
     "text": "Each step is recorded in a fenced PostgreSQL ledger before it runs, so a crash never "
             "repeats a completed side effect."},
    {"id": "doc-replay", "title": "Replay",
     "text": "After a crash another worker replays the agent; recorded tool and LLM results are "
             "returned without calling anything again."},
    {"id": "doc-fencing", "title": "Fencing tokens",
     "text": "A partition epoch acts as a fencing token, so a stale worker cannot write to the ledger."},
    {"id": "doc-kafka", "title": "Kafka commands",
     "text": "Jobs, confirmations and signals arrive as Kafka commands keyed by tenant."},
)

NOTES_PROMPT = "Take notes from these sources"
ANSWER_PROMPT = "Answer the question"

NOTES = ("Steps are written to a fenced ledger before they run; replay returns recorded results; "
         "epochs fence stale workers.")
ANSWER = ("Aetheris records every step in a fenced PostgreSQL ledger before running it, and on "
          "recovery replays the agent from recorded results, so no side effect or LLM call is "
          "repeated after a crash.")

# Keyed by the instruction in the user message rather than a sequence: one worker runs many jobs
# at once, and a sequence would hand each call whatever answer happens to be next.
llm = ScriptedProvider({NOTES_PROMPT: NOTES, ANSWER_PROMPT: ANSWER}, model=MODEL)


def _terms(text: str) -> set[str]:
    return {word.strip(".,;:?!").lower() for word in text.split() if len(word) > 3}


@tool(idempotent=True)
def search(query: str, limit: int = 3) -> list[dict[str, str]]:
    """A fake search engine over :data:`DOCUMENTS`: the documents sharing most terms with the query."""
    wanted = _terms(query)
    scored = [(len(wanted & _terms(doc["title"] + " " + doc["text"])), index)
              for index, doc in enumerate(DOCUMENTS)]
    # Ties keep corpus order, so the same query always returns the same documents.
    ranked = sorted((item for item in scored if item[0] > 0), key=lambda item: (-item[0], item[1]))
    return [dict(DOCUMENTS[index]) for _, index in ranked[:limit]]


def _system(role: str) -> dict[str, str]:
    return {"role": "system", "content": f"You are a careful research assistant. {role}"}


@agent(name="research")
async def research(ctx: Context, question: str, max_sources: int = 3) -> dict[str, Any]:
    """Answer ``question`` from searched sources; report the sources and the tokens used."""
    sources = await ctx.tool(search, query=question, limit=max_sources)
    if not sources:
        return {"question": question, "answer": None, "sources": [],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    listing = "\n".join(f"[{doc['id']}] {doc['title']}: {doc['text']}" for doc in sources)
    notes = await ctx.llm([_system("Be brief."),
                           {"role": "user", "content": f"{NOTES_PROMPT}:\n{listing}"}], model=MODEL)
    await ctx.reason("notes taken; answering from them", sources=[doc["id"] for doc in sources])
    answer = await ctx.llm([_system("Answer in one paragraph."),
                            {"role": "user", "content": f"{ANSWER_PROMPT} {question!r} "
                                                        f"using these notes: {notes.content}"}],
                           model=MODEL)
    prompt_tokens = notes.usage.prompt_tokens + answer.usage.prompt_tokens
    completion_tokens = notes.usage.completion_tokens + answer.usage.completion_tokens
    return {
        "question": question,
        "answer": answer.content,
        "sources": [doc["id"] for doc in sources],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
