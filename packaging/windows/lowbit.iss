; Inno Setup script for the Windows installer (built by .github/workflows/packages.yml):
;   iscc /DAppVersion=0.1.0 packaging\windows\lowbit.iss
; It installs the PyInstaller folder per user by default (no administrator rights
; needed; the installer offers all users too), adds Start-menu and optional desktop
; shortcuts, and offers Lowbit in "Open with" for .gguf files without taking over
; their default program.

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif

[Setup]
AppId={{6F0B6B52-3C1E-4C52-9A51-7C0DB5D7A0B1}
AppName=Lowbit
AppVersion={#AppVersion}
AppPublisher=Lowbit
DefaultDirName={autopf}\Lowbit
DefaultGroupName=Lowbit
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\build\dist
OutputBaseFilename=Lowbit-{#AppVersion}-setup-x64
SetupIconFile=..\build\lowbit.ico
UninstallDisplayIcon={app}\lowbit.exe
Compression=lzma2/max
SolidCompression=yes
ChangesAssociations=yes
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "..\build\pyinstaller\lowbit\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\Lowbit"; Filename: "{app}\lowbit.exe"
Name: "{autodesktop}\Lowbit"; Filename: "{app}\lowbit.exe"; Tasks: desktopicon

[Registry]
Root: HKA; Subkey: "Software\Classes\.gguf\OpenWithProgids"; ValueType: string; ValueName: "Lowbit.gguf"; ValueData: ""; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\Lowbit.gguf"; ValueType: string; ValueName: ""; ValueData: "GGUF model"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\Lowbit.gguf\DefaultIcon"; ValueType: string; ValueName: ""; ValueData: "{app}\lowbit.exe,0"
Root: HKA; Subkey: "Software\Classes\Lowbit.gguf\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\lowbit.exe"" ""%1"""

[Run]
Filename: "{app}\lowbit.exe"; Description: "{cm:LaunchProgram,Lowbit}"; Flags: nowait postinstall skipifsilent
