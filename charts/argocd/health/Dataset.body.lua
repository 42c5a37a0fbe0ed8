if phase == "Ready" then
  hs.status = "Healthy"
  if ready ~= nil and text(ready.message) then
    hs.message = ready.message
  elseif text(obj.status.version) then
    hs.message = "version " .. obj.status.version
  else
    hs.message = "Ready"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = explain(ready, "the dataset could not be prepared")
else
  hs.status = "Progressing"
  hs.message = explain(ready, "phase " .. tostring(phase or "Pending"))
end
return hs
