"""Package data: prompt sets and static files shipped with easyspec."""
