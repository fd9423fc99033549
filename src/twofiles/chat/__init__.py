"""Conversations: typed messages, chat templates, the loss mask, tool-call syntax, the agent loop.

    messages.py    Message / ToolCall (OpenAI form), parse_messages, read_conversations (JSONL),
                   load_conversation / save_conversation, drop_oldest_exchange
    templates.py   ChatFormat: Jinja chat templates -> token ids + loss mask, parse_assistant
                   (tool-call syntax: ours and Hermes'), BUILTIN_TEMPLATE
    agent.py       respond: the agent loop (generate, run tool calls, feed results back; bounded)

The package re-exports the public names, so `from twofiles.chat import ChatFormat` is the
spelling callers use; the modules import one another directly (messages <- templates <- agent).
What it leaves to others: sampling and the KV cache (engine.py), the tools themselves
(twofiles.tools), training on the ids and masks (train/), HTTP (serve/).
"""

from twofiles.chat.agent import ChatEvent, RespondStats, respond, tools_in_prompt
from twofiles.chat.messages import (
    ROLES,
    Message,
    Role,
    ToolCall,
    drop_oldest_exchange,
    load_conversation,
    messages_to_dicts,
    parse_message,
    parse_messages,
    read_conversations,
    save_conversation,
)
from twofiles.chat.templates import BUILTIN_TEMPLATE, ChatFormat, TemplateError

__all__ = [
    "BUILTIN_TEMPLATE",
    "ROLES",
    "ChatEvent",
    "ChatFormat",
    "Message",
    "RespondStats",
    "Role",
    "TemplateError",
    "ToolCall",
    "drop_oldest_exchange",
    "load_conversation",
    "messages_to_dicts",
    "parse_message",
    "parse_messages",
    "read_conversations",
    "respond",
    "save_conversation",
    "tools_in_prompt",
]
