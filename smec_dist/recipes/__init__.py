"""Jobs users run: each is setup -> run -> save -> cleanup (:mod:`smec_dist.recipes.base`).

- :mod:`~smec_dist.recipes.adapter`: ``smec run`` / ``smec compare`` on a BEIR dataset;
- :mod:`~smec_dist.recipes.sts`: the same job on an STS dataset;
- :mod:`~smec_dist.recipes.encode`: ``smec encode`` (the embedding cache those jobs read);
- :mod:`~smec_dist.recipes.e2e`: ``smec train`` (end-to-end);
- :mod:`~smec_dist.recipes.evaluate`: ``smec eval`` (sharded evaluation, MTEB);
- :mod:`~smec_dist.recipes.domain_shift`: ``smec adapters``.
"""
