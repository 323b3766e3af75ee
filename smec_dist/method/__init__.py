"""The method, free of launchers, configs and run folders: SMEC's parts (ADS, S-XBM, SMRL, the
objective), the baselines' heads, head files, and the registry of methods.

Nothing here imports ``train``, ``recipes``, ``cache``, ``config`` or ``dist`` (a test keeps it
so): training settings reach it as plain objects with the attributes it reads.
"""
