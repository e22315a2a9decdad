"""Use cases on a slot's token, shared by the one-shot commands and the menu.

``hacli slots|objects|mechanisms|keygen|sign|verify|encrypt|decrypt|random``
(:mod:`hacli.cli.tokens`) and the CKDemo-style menu (:mod:`hacli.cli.menu`)
do the same things on a slot: they call these functions, so there is one
implementation of each.  Nothing here imports click or rich; errors are
:class:`~hacli.errors.UsageError` (a request that cannot be right) or the
engine's :class:`~hacli.engine.CKRError` (what the token answered).

* :mod:`~hacli.tokenops.mechanisms` -- the one table of mechanisms by
  pkcs11-tool's names, and the mechanism list of a slot (``-M``)
* :mod:`~hacli.tokenops.crypto` -- sign, verify, encrypt, decrypt with a table entry
* :mod:`~hacli.tokenops.objects` -- reading attributes, listing objects, a key by label
* :mod:`~hacli.tokenops.keys` -- key specifications (``rsa:2048``) and generation
* :mod:`~hacli.tokenops.slots` -- the slot list and the ``--slot`` rule
"""
