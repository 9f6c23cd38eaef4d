-- Every request names the same playback ID, so all but the first are cache hits.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"playback_id":"benchHitPlaybackId01","audiences":["video"]}'
