// What this build of the library holds, for users and bug reports.
#pragma once

#include <map>
#include <string>

namespace mnv3 {
std::map<std::string, std::string> build_info();
}
