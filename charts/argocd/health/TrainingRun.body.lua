if stuck ~= nil or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = explain(stuck or ready, "training failed")
elseif phase == "Succeeded" and readyHolds then
  hs.status = "Healthy"
  if ready ~= nil and text(ready.message) then
    hs.message = ready.message
  elseif obj.status.modelVersion ~= nil then
    hs.message = "model version " .. tostring(obj.status.modelVersion) .. " registered"
  else
    hs.message = "Succeeded"
  end
elseif phase == "Suspended" then
  hs.status = "Suspended"
  if ready ~= nil and text(ready.message) then
    hs.message = ready.message
  elseif text(obj.status.progress) then
    hs.message = "suspended: " .. obj.status.progress
  else
    hs.message = "suspended (spec.suspend)"
  end
elseif phase == "Running" and text(obj.status.progress) then
  hs.status = "Progressing"
  hs.message = obj.status.progress
else
  -- Pending, WaitingForDataset (DatasetNotFound, DatasetNotReady, ...), Running before any progress,
  -- or a phase or reason this check does not know.
  hs.status = "Progressing"
  if ready ~= nil and (text(ready.message) or text(ready.reason)) then
    hs.message = explain(ready, "")
  elseif text(obj.status.progress) then
    hs.message = obj.status.progress
  else
    hs.message = "phase " .. tostring(phase or "Pending")
  end
end
return hs
