"""The desk page (`GET /`): ask, see why a question matched, judge; and the two endpoints it needs
beyond the questions API (`POST /questions/explain`, `GET /questions/map`)."""
