"""rgpl_adapt: adapt a dense retriever to a corpus without labels, by R-GPL.

The pipeline is one module per stage, with typed records between stages:

==================  ====================================  =========================
stage               module                                produces
==================  ====================================  =========================
corpus              :mod:`rgpl_adapt.corpus`              ``Document`` records
query generation    :mod:`rgpl_adapt.generation`          ``GeneratedQuery``
hard negatives      :mod:`rgpl_adapt.mining`              ``NegativePool``
pseudo labels       :mod:`rgpl_adapt.labeling`            ``LabeledTriple``
training/remining   :mod:`rgpl_adapt.training`,           a trained student
                    :mod:`rgpl_adapt.remining`
export              :mod:`rgpl_adapt.export`              ONNX + sentence-transformers
evaluation          :mod:`rgpl_adapt.evaluation`          metric tables
==================  ====================================  =========================

:mod:`rgpl_adapt.pipeline` runs them in order, recording a manifest per stage;
:mod:`rgpl_adapt.cli` is the ``rgpl-adapt`` command. The library never prints.
"""

__version__ = "0.1.0"
