if stuck ~= nil or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = explain(stuck or ready, "the dataset could not be prepared")
elseif phase == "Ready" and readyHolds then
  hs.status = "Healthy"
  if ready ~= nil and text(ready.message) then
    hs.message = ready.message
  elseif text(obj.status.version) then
    hs.message = "version " .. obj.status.version
  else
    hs.message = "Ready"
  end
else
  hs.status = "Progressing"
  hs.message = explain(ready, "phase " .. tostring(phase or "Pending"))
end
return hs
