"""The report: the recommendation (``recommend``), its HTML (``render``), the Swift snippet (``swift``) and the
pages around it (``pages``: index and failure pages).  Reads stage records only."""
