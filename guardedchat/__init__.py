"""GuardedChat: a domain-restricted chatbot that answers in Taiwan Mandarin."""

__version__ = "0.1.0"
