"""Identity feed, PIX, PDQ and $match (issue #3)."""

urlpatterns: list = []
