"""Orchestration: the pykka actors that hold a batch's state and decide, and what they
run on.

The runtime (:mod:`~actors.orchestration.runtime`, the one object the service drives),
the batch manager, one supervisor per batch, a file actor per attempt, their messages,
the dispatcher the file actors share, the clock and the password vault.

The rule of this layer: it decides with the policy and acts through execution and
storage; it never parses a PDF, never sleeps, never blocks an actor on a future, and
never imports the wire (``server``) or generated code. Names are imported from their
modules: importing this package loads nothing.
"""
