"""The dashboard page at /dashboard: static HTML, JS and CSS over the public GraphQL API and its
subscriptions, with the charting library vendored (static/vendor), so it works offline."""
