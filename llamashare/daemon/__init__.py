"""The background service of a node's home: the daemon process (``service``) that runs the swarm
engine, its JSON API (``api``) and web page (``dashboard``), and the CLI's side of it: finding and
starting the daemon (``client``), handing it a release and following it (``submit``), and the
home's folders and configuration (``home``).
"""
