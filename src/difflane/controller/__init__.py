"""The Kubernetes controller (``difflane controller``): repairs what a worker pod cannot report.

``reconciler`` runs the loop, ``decide`` holds the rules, ``leader`` the Lease election,
``informer`` the list-and-watch caches, ``pending`` the sweep over unfinished records.
"""
