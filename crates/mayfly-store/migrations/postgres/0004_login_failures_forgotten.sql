-- Names whose failed logins are forgotten (left alone for an hour after their last attempt or
-- throttle): each login attempt deletes a few of these rows, found through this index, so that
-- a spray over many names does not keep a row per name ever tried.
CREATE INDEX login_failures_forgotten ON login_failures (throttled_until);
