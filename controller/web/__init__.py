"""The controller's read-only web view: ``server`` serves it, ``state`` builds its JSON, ``static/`` is the page."""
