-- status: ARGV[2..] user ids.
-- Returns one integer per user, in order: 1 when online (a session on a live node), else 0.

local online = {}
for i = 2, #ARGV do
  if live_sessions(ARGV[i]) > 0 then
    online[i - 1] = 1
  else
    online[i - 1] = 0
  end
end
return online
