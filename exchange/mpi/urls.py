"""Patient index pages: review queue and stewardship (issue #3)."""

urlpatterns: list = []
