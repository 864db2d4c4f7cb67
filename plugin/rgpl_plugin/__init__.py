"""rgpl_plugin: what lives in or talks to the search engine.

Backends (the embedded default, OpenSearch, Elasticsearch) implement one small protocol,
:class:`rgpl_plugin.base.Backend`, that the adaptation pipeline in :mod:`rgpl_adapt` uses.
"""

from rgpl_plugin.base import Backend, Document, Hit

__all__ = ["Backend", "Document", "Hit"]
