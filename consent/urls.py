"""Patient portal (/me/), share links (/s/), access requests and break-glass (issue #5)."""

urlpatterns: list = []
